"""Reading the user's inputs: images, data sets, models."""
