"""Helpers shared by the osbuild modules"""
