-- The tables query.sql reads, as internal/pgtest provisions them: items in
-- each tenant's database (and schema), docs in database app under
-- row-level security on app.tenant_id.

CREATE TABLE items (
	id serial PRIMARY KEY,
	tenant text NOT NULL,
	val int NOT NULL
);

CREATE TABLE docs (
	id serial PRIMARY KEY,
	tenant_id text NOT NULL,
	body text NOT NULL
);
