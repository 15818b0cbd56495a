"""Manifest formats"""
