package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The trust model in docs/operations.md ("Who may call what") says, for
// every route the agent serves and every transfer stream kind, what lets a
// request through. TestRouteTableMatchesCode keeps it in step with the
// code: every route pattern and stream kind registered in the module's
// non-test sources is in the table, and the table names nothing that is
// not registered. (Whether each route really is guarded as the table says
// is for the tests of each package and the attack e2e.)

var (
	routeLit   = regexp.MustCompile(`"(GET|POST|PUT|PATCH|DELETE) (/[^" ]*)"`)
	streamReg  = regexp.MustCompile(`(?:streams\.Handle|\.HandlePages)\((\w+),`) // streams and page channels
	constLit   = regexp.MustCompile(`(?m)^\s*(?:const\s+)?(\w+)\s*=\s*"([^"]*)"`)
	backticked = regexp.MustCompile("`([^`]+)`")
)

// registered returns the route patterns ("METHOD /path") and stream kinds
// the module's sources outside internal/ register.
func registered(t *testing.T, root string) (routes []string, kinds []string) {
	t.Helper()
	srcByDir := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "internal", "vendor", "testdata":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		srcByDir[filepath.Dir(path)] += string(b) + "\n"
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for dir, src := range srcByDir {
		code := stripComments(src)
		for _, m := range routeLit.FindAllStringSubmatch(code, -1) {
			routes = append(routes, m[1]+" "+m[2])
		}
		consts := map[string]string{}
		for _, m := range constLit.FindAllStringSubmatch(code, -1) {
			consts[m[1]] = m[2]
		}
		for _, m := range streamReg.FindAllStringSubmatch(code, -1) {
			k, ok := consts[m[1]]
			if !ok {
				t.Fatalf("%s: stream kind %s is not a string constant of its package", dir, m[1])
			}
			kinds = append(kinds, k)
		}
	}
	slices.Sort(routes)
	slices.Sort(kinds)
	return slices.Compact(routes), slices.Compact(kinds)
}

// stripComments drops // comments, so that routes named in doc comments
// (examples, lists) do not count as registered.
func stripComments(src string) string {
	var b strings.Builder
	for _, line := range strings.Split(src, "\n") {
		if i := strings.Index(line, "//"); i >= 0 && !strings.Contains(line[:i], `"`) {
			line = line[:i]
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// docSection returns the lines of "### Who may call what" up to the
// paragraph on local users.
func docSection(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "### Who may call what")
	j := strings.Index(s, "**A local user**")
	if i < 0 || j < i {
		t.Fatalf("%s: no section \"Who may call what\" before \"A local user\"", path)
	}
	return strings.Split(s[i:j], "\n")
}

func TestRouteTableMatchesCode(t *testing.T) {
	routes, kinds := registered(t, "../..")
	if len(routes) < 40 || len(kinds) < 8 {
		t.Fatalf("found only %d routes and %d stream kinds: the scan is broken", len(routes), len(kinds))
	}
	lines := docSection(t, "../../docs/operations.md")

	// Documented: a line names "`METHOD /path`", or names "`/path`" on a
	// line whose routes are of that method ("`METHOD /first`, `/next`").
	documented := func(route string) bool {
		method, path, _ := strings.Cut(route, " ")
		for _, l := range lines {
			if strings.Contains(l, "`"+route+"`") || strings.Contains(l, "`"+path+"`") && strings.Contains(l, "`"+method+" /") {
				return true
			}
		}
		return false
	}
	paths := map[string]bool{}
	for _, r := range routes {
		_, p, _ := strings.Cut(r, " ")
		paths[p] = true
		if !documented(r) {
			t.Errorf("route %q is registered but not in docs/operations.md's \"Who may call what\"", r)
		}
	}

	isKind := map[string]bool{}
	for _, k := range kinds {
		isKind[k] = true
	}
	inStreamRows := map[string]bool{}
	for _, l := range lines {
		for _, m := range backticked.FindAllStringSubmatch(l, -1) {
			tok := m[1]
			if _, p, ok := strings.Cut(tok, " "); ok && routeLit.MatchString(`"`+tok+`"`) {
				tok = p
			}
			if strings.HasPrefix(tok, "/") && !paths[tok] {
				t.Errorf("docs/operations.md's \"Who may call what\" names %q, which no code registers: %s", tok, l)
			}
		}
		if strings.HasPrefix(l, "| stream") {
			cells := strings.Split(l, "|")
			for _, m := range backticked.FindAllStringSubmatch(cells[1], -1) {
				if !isKind[m[1]] {
					t.Errorf("docs/operations.md lists stream kind %q, which no code handles", m[1])
				}
				inStreamRows[m[1]] = true
			}
		}
	}
	for _, k := range kinds {
		if !inStreamRows[k] {
			t.Errorf("stream kind %q is handled but not in docs/operations.md's transfer table", k)
		}
	}
}
