"""Services: models, images, captures and their composition. Torch here, never HTTP."""
