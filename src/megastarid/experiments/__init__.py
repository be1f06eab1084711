"""Experiments that drive the training commands: the strategy × loss grid search.

``plan`` turns options into experiments and exact phase commands, ``runner`` runs them as separate
processes (one per GPU, or one after another on the CPU), ``slurm`` hands each experiment to a SLURM job
through submitit (the job runs the same runner), ``results`` rebuilds the tables and plot from the run
folders, ``status`` reports where each experiment stands, and ``grid_search`` is the command line.
"""
