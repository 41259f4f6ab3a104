-- MLflow's tracking database beside WeLIP's own (compose.yaml). The postgres image runs the
-- files of /docker-entrypoint-initdb.d once, when it initialises an empty data volume.
CREATE DATABASE mlflow OWNER welip;
