"""
Helpers shared by several test modules, which never import each other.
"""
