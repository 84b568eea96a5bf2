"""mmfm.interop"""
