package schema

import (
	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/field"
)

// Note is one tenant's note. Its table, ent_notes, is created in every
// tenant's schema by the per-tenant migration in the tests; the tenant column
// lets the tests check that no tenant ever reads another tenant's rows.
type Note struct {
	ent.Schema
}

// Annotations names the table.
func (Note) Annotations() []schema.Annotation {
	return []schema.Annotation{entsql.Annotation{Table: "ent_notes"}}
}

// Fields of the Note.
func (Note) Fields() []ent.Field {
	return []ent.Field{
		field.String("tenant"),
		field.String("body"),
		field.Int("version").Default(1),
	}
}

// Edges of the Note.
func (Note) Edges() []ent.Edge {
	return nil
}
