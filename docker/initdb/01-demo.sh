#!/bin/sh
# Creates the role pgtenant logs in as, the demo database and its schema
# (the same as `pgtenant demo`: demo-schema.psql is generated from it).
set -eu
psql -v ON_ERROR_STOP=1 -v pw="$PGTENANT_BACKEND_PASSWORD" <<'SQL'
CREATE ROLE pgtenant_app LOGIN NOINHERIT PASSWORD :'pw';
CREATE ROLE saas_owner NOLOGIN;
CREATE DATABASE saas OWNER saas_owner;
SQL
psql -v ON_ERROR_STOP=1 -d saas -f /docker-entrypoint-initdb.d/demo-schema.psql
