"""Capacity benchmark and soak for the streamer (see README "Performance")."""
