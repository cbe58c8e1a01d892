-- The warehouse's own database beside Dagster's (the marketdata code creates its schema).
CREATE DATABASE marketdata OWNER marketdata;
