# Sourced by every wingclr *.sbatch script, from the repository root: the software environment of
# a job. Edit this one file for your site; the sbatch scripts stay as they are.
#
# Site modules (examples; `module avail` lists yours):
# module purge
# module load cuda/12.4
# module load python/3.11
#
# Environment: a conda env when WINGCLR_CONDA_ENV is set (e.g. `export WINGCLR_CONDA_ENV=wingclr`
# before sbatch; the job inherits it), else the venv made by `make install` (WINGCLR_VENV, default .venv).
if [[ -n "${WINGCLR_CONDA_ENV:-}" ]]; then
    source "$(conda info --base)/etc/profile.d/conda.sh"
    conda activate "${WINGCLR_CONDA_ENV}"
else
    source "${WINGCLR_VENV:-.venv}/bin/activate"
fi
# Compute nodes usually reach no internet: never try a download, fail at once naming the file to
# fetch on the login node (`python -m wingclr.weights fetch --all`). Set WINGCLR_OFFLINE=0 before
# sbatch on a cluster whose nodes are online.
export WINGCLR_OFFLINE="${WINGCLR_OFFLINE:-1}"
# The first import of umap / rembg compiles numba code; keep that cache where the job may write.
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-${PWD}/work/.numba-cache}"
echo "wingclr job ${SLURM_JOB_ID:-?} on $(hostname): $(command -v python)"
