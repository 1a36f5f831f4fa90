package tenantpgprom

import (
	"os"
	"strings"
	"testing"
)

// TestDocSnippetsCompile checks that every Go snippet of
// docs/observability.md appears, line for line, in example_test.go, whose
// examples compile and run.
func TestDocSnippetsCompile(t *testing.T) {
	doc, err := os.ReadFile("../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	code := "\n" + strings.Join(trimmedLines(string(src)), "\n") + "\n"
	blocks := 0
	for i, part := range strings.Split(string(doc), "```go\n") {
		if i == 0 {
			continue
		}
		block, _, ok := strings.Cut(part, "```")
		if !ok {
			t.Fatalf("snippet %d is not closed", i)
		}
		blocks++
		if want := "\n" + strings.Join(trimmedLines(block), "\n") + "\n"; !strings.Contains(code, want) {
			t.Errorf("snippet %d of docs/observability.md is not in example_test.go:\n%s", i, block)
		}
	}
	if blocks < 3 {
		t.Fatalf("only %d Go snippets found", blocks)
	}
}

func trimmedLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
