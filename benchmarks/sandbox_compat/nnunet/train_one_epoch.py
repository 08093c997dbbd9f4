# One short epoch of nnU-Net's default trainer on the CPU (the class name stays nnUNetTrainer, so that
# inference finds it without importing the trainer variants, which pull in timm -> torchvision).
import torch
from nnunetv2.run.run_training import get_trainer_from_args

t = get_trainer_from_args("1", "3d_fullres", 0, "nnUNetTrainer", "nnUNetPlans", device=torch.device("cpu"))
t.num_epochs = 1
t.num_iterations_per_epoch = 50
t.num_val_iterations_per_epoch = 10
t.run_training()
