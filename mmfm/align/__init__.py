"""mmfm.align"""
