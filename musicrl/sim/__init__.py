"""Simulated listeners: hidden tastes of the audio or the codes, and the noisy, faulty votes they cast.

Tests, benchmarks and the closed-loop demo use them to play the users whose preferences the platform learns;
the serving path never imports them.
"""
