"""The kernel model of shmkit (issue 3). Imports nothing from shmkit or the OS."""
