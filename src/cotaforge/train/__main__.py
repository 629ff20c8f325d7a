"""`python -m cotaforge.train CONFIG [--set key=value ...]`: the entry point for multi-GPU launchers.

    accelerate launch --num_processes 4 -m cotaforge.train configs/finetune/qwen2-audio-7b-lora.yaml
    torchrun --nproc_per_node 4 -m cotaforge.train configs/finetune/qwen2-audio-7b-lora.yaml
"""

import typer

from cotaforge.train.cli import finetune

if __name__ == "__main__":
    typer.run(finetune)
