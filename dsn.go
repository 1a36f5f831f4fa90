package tenantpg

import (
	"fmt"
	"net/url"
	"strings"
)

// tenantParamPrefix marks the DSN parameters that belong to tenantpg.
const tenantParamPrefix = "tenant_"

// splitDSN removes every tenant_* parameter from dsn and returns the rest
// (for pgx/pgxpool), the tenant parameters, and the names of all other
// parameters (so that callers can tell what the DSN set explicitly). dsn is a
// postgres:// or postgresql:// URL or a keyword/value string.
func splitDSN(dsn string) (rest string, tenant map[string]string, keys map[string]bool, err error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return splitURL(dsn)
	}
	return splitKeywordValue(dsn)
}

func splitURL(dsn string) (string, map[string]string, map[string]bool, error) {
	tenant := map[string]string{}
	keys := map[string]bool{}
	// The query starts at the first '?' after the user info, which, as for
	// libpq and pgx, ends at a '@' seen before any '/' and may contain '?'.
	after := strings.Index(dsn, "://") + len("://")
	if i := strings.IndexAny(dsn[after:], "@/"); i >= 0 && dsn[after+i] == '@' {
		after += i + 1
	}
	q := strings.IndexByte(dsn[after:], '?')
	if q < 0 {
		return dsn, tenant, keys, nil
	}
	base, query := dsn[:after+q], dsn[after+q+1:]
	var kept []string
	for _, seg := range strings.Split(query, "&") {
		if seg == "" {
			continue
		}
		rawKey, rawVal, _ := strings.Cut(seg, "=")
		key, err := uriDecode(rawKey)
		if err != nil {
			return "", nil, nil, invalidConfig("DSN query parameter %q: %v", rawKey, err)
		}
		if !strings.HasPrefix(key, tenantParamPrefix) {
			keys[key] = true
			kept = append(kept, seg)
			continue
		}
		val, err := uriDecode(rawVal)
		if err != nil {
			return "", nil, nil, invalidConfig("DSN parameter %s: %v", key, err)
		}
		if _, dup := tenant[key]; dup {
			return "", nil, nil, invalidConfig("DSN parameter %s given twice", key)
		}
		tenant[key] = val
	}
	if len(kept) == 0 {
		return base, tenant, keys, nil
	}
	return base + "?" + strings.Join(kept, "&"), tenant, keys, nil
}

// uriDecode percent-decodes a URL query key or value as libpq and pgx do: a
// '+' stays a '+' (tenant_pattern=[a-z]+ must not become "[a-z] "), and %00
// is refused.
func uriDecode(s string) (string, error) {
	if !strings.ContainsRune(s, '%') {
		return s, nil
	}
	v, err := url.PathUnescape(s)
	if err != nil {
		return "", err
	}
	if strings.IndexByte(v, 0) >= 0 {
		return "", fmt.Errorf("forbidden value %%00 in %q", s)
	}
	return v, nil
}

// splitKeywordValue follows libpq's keyword/value rules: key = value pairs
// separated by whitespace, values optionally single-quoted, backslash escapes
// the next character.
func splitKeywordValue(dsn string) (string, map[string]string, map[string]bool, error) {
	tenant := map[string]string{}
	keys := map[string]bool{}
	var out strings.Builder
	s := dsn
	for {
		s = strings.TrimLeft(s, " \t\n\r\v\f")
		if s == "" {
			break
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return "", nil, nil, invalidConfig("DSN: missing '=' after %q", s)
		}
		key := strings.TrimRight(s[:eq], " \t\n\r\v\f")
		if key == "" || strings.ContainsAny(key, " \t\n\r\v\f") {
			return "", nil, nil, invalidConfig("DSN: malformed key %q", key)
		}
		s = strings.TrimLeft(s[eq+1:], " \t\n\r\v\f")
		var val strings.Builder
		if strings.HasPrefix(s, "'") {
			s = s[1:]
			closed := false
			for len(s) > 0 {
				c := s[0]
				s = s[1:]
				if c == '\\' && len(s) > 0 {
					val.WriteByte(s[0])
					s = s[1:]
					continue
				}
				if c == '\'' {
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return "", nil, nil, invalidConfig("DSN: unterminated quoted value for %s", key)
			}
		} else {
			for len(s) > 0 && !strings.ContainsRune(" \t\n\r\v\f", rune(s[0])) {
				c := s[0]
				s = s[1:]
				if c == '\\' {
					if len(s) == 0 {
						break // like libpq, a trailing backslash ends the value and is dropped
					}
					c = s[0]
					s = s[1:]
				}
				val.WriteByte(c)
			}
		}
		if strings.HasPrefix(key, tenantParamPrefix) {
			if _, dup := tenant[key]; dup {
				return "", nil, nil, invalidConfig("DSN parameter %s given twice", key)
			}
			tenant[key] = val.String()
			continue
		}
		keys[key] = true
		if out.Len() > 0 {
			out.WriteByte(' ')
		}
		out.WriteString(key)
		out.WriteString("='")
		v := strings.ReplaceAll(val.String(), `\`, `\\`)
		out.WriteString(strings.ReplaceAll(v, `'`, `\'`))
		out.WriteByte('\'')
	}
	return out.String(), tenant, keys, nil
}
