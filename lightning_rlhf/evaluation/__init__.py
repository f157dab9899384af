"""Evaluation a user runs on their own models and data: a policy's score, the win rate of one
policy over another, and a reward model's accuracy and calibration on preference files."""
