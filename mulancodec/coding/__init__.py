"""Coding: push/pop codecs over constriction, the bits-back chain, the .mlc container."""
