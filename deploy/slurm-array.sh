#!/usr/bin/env bash
# autoprune workers as a SLURM job array: one `autoprune worker` per array task, one GPU each, all
# working one study through a PostgreSQL storage and an S3-compatible artifact store.
#
# 1. Make the study ready once, from a login node (it trains or reads the base model, puts it in the
#    store, records the settings and enqueues the baselines; it runs no trial):
#
#      export AUTOPRUNE_STORAGE="$(cat ~/.autoprune-storage)"   # postgresql://user:password@host/db
#      autoprune search my-study.toml --artifacts s3://my-bucket/autoprune --workers 0
#
# 2. sbatch deploy/slurm-array.sh
#
# 3. Anywhere, with the storage URL alone:
#      autoprune report --storage "$AUTOPRUNE_STORAGE" --study my-study
#
# The storage URL and the store's credentials come from files only you can read, never from this
# script or the command line (`ps` shows command lines to every user of a node).
#SBATCH --job-name=autoprune
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=12:00:00
#SBATCH --requeue
set -euo pipefail

STUDY=${STUDY:-my-study}
AUTOPRUNE_STORAGE="$(cat ~/.autoprune-storage)"
export AUTOPRUNE_STORAGE
# boto3 reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials) and, for MinIO or
# Ceph, AWS_ENDPOINT_URL
export AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL:-http://minio.cluster.local:9000}

srun autoprune worker --study "$STUDY" --device cuda --threads "$SLURM_CPUS_PER_TASK"
