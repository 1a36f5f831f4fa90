//go:build go1.27

package tenantpg

import (
	"database/sql"
	"database/sql/driver"
	"errors"
	"reflect"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// As of Go 1.27 database/sql scans through driver.RowsColumnScanner when
// the rows implement it, and pgx's stdlib.Rows does (stdlib/sql_go1.27.go):
// destinations database/sql knows get its conversions of the same values
// as Next, and others (Go slices for arrays, pgtype types, ...) are scanned
// by pgx directly. tenantpg's rows do the same, so that a scan works
// through tenantpg exactly when it works through stdlib.OpenDB. Run the
// tests with GOTOOLCHAIN=go1.27.3 (make test does) to exercise this file.

var _ driver.RowsColumnScanner = (*rows)(nil)

// NextRow moves to the next row; io.EOF after the last.
func (r *rows) NextRow() error { return r.advance() }

// ScanColumn scans column index of the current row into dest: through
// database/sql's conversions for the destinations it knows, through pgx's
// type map for the others. It returns the conversion's error.
func (r *rows) ScanColumn(scanCtx driver.ScanContext, index int, dest any) error {
	if dest == nil {
		return errors.New("destination not a pointer")
	}
	rv := reflect.ValueOf(dest)
	if rv.Kind() == reflect.Pointer && rv.IsNil() {
		return errors.New("destination pointer is nil")
	}
	src := r.rows.RawValues()[index]
	if isSQLScanDestination(rv.Type()) {
		var value driver.Value
		if src != nil {
			var err error
			if value, err = r.columnValue(index, src); err != nil {
				return err
			}
		}
		return sql.ConvertAssign(scanCtx, dest, value)
	}
	fd := r.rows.FieldDescriptions()[index]
	return r.m.Scan(fd.DataTypeOID, fd.Format, src, dest)
}

// sqlScanDestinations caches isSQLScanDestination: reflect.Type to bool.
var sqlScanDestinations sync.Map

// isSQLScanDestination reports whether database/sql's conversions handle
// destinations of type t, as pgx's stdlib decides it: sql.Scanner
// implementations, scalars, []byte and time.Time, and pointers to them.
func isSQLScanDestination(t reflect.Type) bool {
	if v, ok := sqlScanDestinations.Load(t); ok {
		return v.(bool)
	}
	is := isSQLScanDestinationUncached(t)
	sqlScanDestinations.Store(t, is)
	return is
}

func isSQLScanDestinationUncached(t reflect.Type) bool {
	var namedPointers map[reflect.Type]bool
	for {
		if t.Implements(reflect.TypeFor[sql.Scanner]()) {
			return true
		}
		// Native byte slices (FlatArray[byte], PreallocBytes) are pgx's.
		if t.Implements(reflect.TypeFor[pgtype.ArraySetter]()) || t.Implements(reflect.TypeFor[pgtype.BytesScanner]()) {
			return false
		}
		if t.Kind() != reflect.Pointer {
			break
		}
		// Only named pointer types can loop without reaching a
		// non-pointer; pgx's bounded planning handles those.
		if t.Name() != "" {
			if namedPointers[t] {
				return false
			}
			if namedPointers == nil {
				namedPointers = make(map[reflect.Type]bool)
			}
			namedPointers[t] = true
		}
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64, reflect.String, reflect.Interface:
		return true
	case reflect.Slice:
		return t.Elem().Kind() == reflect.Uint8
	case reflect.Struct:
		return t.ConvertibleTo(reflect.TypeFor[time.Time]())
	default:
		return false
	}
}
