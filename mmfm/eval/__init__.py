"""mmfm.eval"""
