"""mmfm.diffusion"""
