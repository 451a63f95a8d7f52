-- Run last by the official image's entrypoint at the first start, over the local socket: the superuser
-- keeps socket access (trust, inside the container) and loses its password, so no TCP login as the
-- superuser exists, whatever POSTGRES_PASSWORD was (compose.yaml's default is written in the file).
ALTER ROLE CURRENT_USER PASSWORD NULL;
