-- Run once by the Postgres superuser when the data directory is first created (the official image's
-- /docker-entrypoint-initdb.d contract): the application role memgpt, which is NOT a superuser and
-- may not create databases or roles, the database memgpt owned by it, and the vector extension,
-- which only a superuser may create. Idempotent, so it also runs after the toolkit's own bootstrap.
SELECT 'CREATE ROLE memgpt LOGIN PASSWORD ''memgpt'' NOSUPERUSER NOCREATEDB NOCREATEROLE'
    WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'memgpt') \gexec
SELECT 'CREATE DATABASE memgpt OWNER memgpt'
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'memgpt') \gexec
\connect memgpt
CREATE EXTENSION IF NOT EXISTS vector;
GRANT ALL ON SCHEMA public TO memgpt;
