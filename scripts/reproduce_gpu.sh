#!/usr/bin/env bash
# Reproduce the paper's ResNet32x4 -> ResNet8x4 KD vs SD-KD on real CIFAR-100, compressed to fit a
# short GPU lease: a resnet32x4 teacher (distill=none), then resnet8x4 students with KD and SD-KD
# (M = {1, 2}, official settings) on the same budget and seed. bf16-mixed, channels-last,
# device-resident data. The official schedule (240 epochs, x0.1 at 150/180/210) is scaled to the
# epochs given: milestones at 62.5%, 75% and 87.5% of them.
#
# usage: OUT=<folder> bash scripts/reproduce_gpu.sh DATA_ROOT TEACHER_EPOCHS STUDENT_EPOCHS
#   DATA_ROOT holds cifar-100-python/ (see scripts/pack_cifar.py to carry it to the GPU machine)
# Writes under $OUT: teacher/, kd/, sd_kd/ (logs, results.json), resnet32x4_cifar100.pth (fp16), summary.
set -euo pipefail
root=${1:?DATA_ROOT}; te=${2:?TEACHER_EPOCHS}; se=${3:?STUDENT_EPOCHS}
out=${OUT:-outputs/reproduce}
PY=${PYTHON:-python3}
milestones() { "$PY" -c "e=$1; print('[' + ','.join(str(max(1, round(e * f))) for f in (0.625, 0.75, 0.875)) + ']')"; }
# TRAINER=cpu and EXTRA="trainer.limit_train_batches=5 ..." give a CPU rehearsal of the whole script
read -r -a extra <<< "${EXTRA:-}"
common=(data.root="$root" data.device_resident=true trainer="${TRAINER:-gpu}" callbacks=quiet logger=csv seed=0 "${extra[@]}")
mkdir -p "$out"

"$PY" -m sdd_lightning.train experiment=cifar100/teacher_resnet32x4 "${common[@]}" \
  epochs="$te" scheduler.milestones="$(milestones "$te")" hydra.run.dir="$out/teacher"
best=$("$PY" -c "import json; print(json.load(open('$out/teacher/results.json'))['best_checkpoint'])")
"$PY" scripts/export_teacher.py "$best" resnet32x4 100 "$out/resnet32x4_cifar100.pth"

for method in kd sd_kd; do
  "$PY" -m sdd_lightning.train pair=cifar100/res32x4_res8x4 distill="$method" "${common[@]}" \
    teacher.checkpoint="$out/resnet32x4_cifar100.pth" epochs="$se" scheduler.milestones="$(milestones "$se")" \
    hydra.run.dir="$out/$method"
done
"$PY" -m sdd_lightning.summary "$out" --out "$out"
