"""`python -m trainer ...` is dfa-train; torchrun uses it: torchrun --nproc_per_node N -m trainer"""

from trainer.cli import main

main()
