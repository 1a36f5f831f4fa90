package orm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGuideSnippets checks that every line of every Go snippet in
// docs/orms.md appears in this module's Go files or in the library's
// example_test.go, which compile (and mostly run) with the tests: the guide
// shows only tested code. A line "..." marks an omission.
func TestGuideSnippets(t *testing.T) {
	guide, err := os.ReadFile(filepath.Join("..", "..", "docs", "orms.md"))
	if err != nil {
		t.Fatal(err)
	}
	sources, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	sources = append(sources, filepath.Join("..", "..", "example_test.go"))
	known := map[string]bool{}
	for _, f := range sources {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			known[strings.TrimSpace(line)] = true
		}
	}
	snippets, inGo := 0, false
	for i, line := range strings.Split(string(guide), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "```go"):
			inGo = true
			snippets++
		case strings.HasPrefix(trimmed, "```"):
			inGo = false
		case inGo && trimmed != "" && trimmed != "..." && !known[trimmed]:
			t.Errorf("docs/orms.md:%d: %q is in no tested file", i+1, trimmed)
		}
	}
	if snippets < 8 {
		t.Fatalf("found only %d Go snippets in docs/orms.md", snippets)
	}
}
