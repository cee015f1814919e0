"""The framework-free core: the stage spec, seeding, the dataset, devices, errors."""
