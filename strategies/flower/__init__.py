"""The thin Flower layer: a Strategy subclass per algorithm that checks replies, converts records,
calls the math, logs.
"""
