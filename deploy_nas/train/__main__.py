"""`python -m deploy_nas.train` and `torchrun --nproc_per_node N -m deploy_nas.train`: `deploy-nas train`, with
several processes under torchrun talking over gloo (CPU) or NCCL (`--device cuda`)."""
from deploy_nas.cli import train
from deploy_nas.cli_options import main_one_line

if __name__ == "__main__":
    main_one_line(train, prog_name="python -m deploy_nas.train")
