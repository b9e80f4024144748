"""invariance"""
