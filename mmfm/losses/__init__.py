"""mmfm.losses"""
