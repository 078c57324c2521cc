#!/bin/bash
# Train PRSN-only experiments on a lent GPU from a packed bank (session 6): benchmarks/gpu_train_stage.sh with
# STAGE=prsn. Usage: PACK=.devdata/train25.safetensors.gz CONFIGS="exp_prsn_wide exp_prsn_wide_seed2" \
#        DEADLINE_S=400 OUT=$OUT bash benchmarks/gpu_train_prsn.sh
STAGE=prsn exec bash "$(dirname "$0")/gpu_train_stage.sh"
