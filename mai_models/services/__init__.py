"""Local process managers for the production services (PostgreSQL, an S3 object store, an MLflow
server, a Slurm cluster): each starts on 127.0.0.1 with a directory of its own and stops only its own
processes. Tests and benchmarks start them; production points the settings at real ones."""
