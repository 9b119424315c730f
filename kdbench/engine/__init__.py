"""Training engine: seeding, devices, checkpoints/resume, the training loop."""
