"""mmfm.adapt"""
