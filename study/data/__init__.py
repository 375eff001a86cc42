"""Corpora, features, text normalisation and batching: everything between audio files and model inputs."""
