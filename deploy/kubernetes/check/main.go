// Command k8scheck renders genwire's Kustomize trees and strictly decodes every rendered
// document into its real Go type: Kubernetes kinds into k8s.io/api, KEDA's into
// github.com/kedacore/keda/v2/apis/keda/v1alpha1 (and each kafka trigger's metadata through
// KEDA's own typed-config parser), Strimzi's into strimzi.go (Strimzi publishes no Go API).
//
// A field the type does not have, a value of the wrong type, a duplicate key, a field in the
// wrong case or a kind with no Go type here fails the check.
//
//	k8scheck [-o rendered.yaml] PATH...
//
// PATH is a folder with a kustomization.yaml (rendered with sigs.k8s.io/kustomize/api/krusty,
// as `kubectl kustomize` does) or a YAML file (checked as it is). -o writes every rendered
// document, one stream per PATH separated by a `# k8scheck: PATH` line, for other tests.
// Exit status: 0 all documents passed, 1 a document failed, 2 bad usage or a render error.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	sjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

func main() {
	out := flag.String("o", "", "write the rendered documents to this file")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: k8scheck [-o rendered.yaml] PATH...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	var rendered bytes.Buffer
	failed := 0
	for _, path := range flag.Args() {
		docs, err := load(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "k8scheck: %s: %v\n", path, err)
			os.Exit(2)
		}
		fmt.Fprintf(&rendered, "# k8scheck: %s\n", path)
		for i, doc := range docs {
			rendered.WriteString("---\n")
			rendered.Write(doc)
			name, err := check(doc)
			if err != nil {
				failed++
				fmt.Printf("FAIL %s [document %d] %s: %v\n", path, i+1, name, err)
				continue
			}
			fmt.Printf("ok   %s %s\n", path, name)
		}
	}
	if *out != "" {
		if err := os.WriteFile(*out, rendered.Bytes(), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "k8scheck: %v\n", err)
			os.Exit(2)
		}
	}
	if failed > 0 {
		fmt.Printf("%d document(s) failed the strict check\n", failed)
		os.Exit(1)
	}
}

// load renders a kustomization folder or reads a YAML file; it returns one YAML per document.
func load(path string) ([][]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	var stream []byte
	if info.IsDir() {
		stream, err = render(path)
	} else {
		stream, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	return split(stream), nil
}

// render builds a kustomization as `kubectl kustomize PATH` does (files only from inside it).
func render(dir string) ([]byte, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := k.Run(filesys.MakeFsOnDisk(), abs)
	if err != nil {
		return nil, err
	}
	return resources.AsYaml()
}

// split cuts a YAML stream at `---` lines, dropping documents that hold only comments.
func split(stream []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if hasContent(cur.Bytes()) {
			docs = append(docs, append([]byte(nil), cur.Bytes()...))
		}
		cur.Reset()
	}
	for _, line := range strings.SplitAfter(string(stream), "\n") {
		if strings.TrimRight(line, " \r\n") == "---" {
			flush()
			continue
		}
		cur.WriteString(line)
	}
	flush()
	return docs
}

func hasContent(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		t := strings.TrimSpace(line)
		if t != "" && !strings.HasPrefix(t, "#") {
			return true
		}
	}
	return false
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// check decodes one document strictly into the Go type of its apiVersion and kind, then runs
// the checks that type has (validators); it returns the document's name for the report.
func check(doc []byte) (string, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return "?", fmt.Errorf("not valid YAML: %w", err)
	}
	var meta typeMeta
	if err := sjson.UnmarshalCaseSensitivePreserveInts(js, &meta); err != nil {
		return "?", fmt.Errorf("no apiVersion/kind: %w", err)
	}
	name := fmt.Sprintf("%s %s %s/%s", meta.APIVersion, meta.Kind, meta.Metadata.Namespace, meta.Metadata.Name)
	if meta.APIVersion == "" || meta.Kind == "" {
		return name, errors.New("apiVersion and kind are required")
	}
	if meta.Metadata.Name == "" {
		return name, errors.New("metadata.name is required")
	}
	entry, ok := registry[meta.APIVersion+"/"+meta.Kind]
	if !ok {
		return name, fmt.Errorf("no Go type for %s %s here (add it to types.go)", meta.APIVersion, meta.Kind)
	}
	obj := entry.new()
	if err := decodeStrict(js, obj); err != nil {
		return name, err
	}
	if entry.validate != nil {
		if err := entry.validate(obj); err != nil {
			return name, err
		}
	}
	return name, nil
}

// decodeStrict is the API server's strict decoding (kubectl --validate=strict): case-sensitive
// field names, and unknown or duplicate fields are errors, as are values of the wrong type.
func decodeStrict(js []byte, obj any) error {
	strict, err := sjson.UnmarshalStrict(js, obj, sjson.DisallowDuplicateFields, sjson.DisallowUnknownFields)
	if err != nil {
		return fmt.Errorf("wrong type: %w", err)
	}
	if len(strict) > 0 {
		msgs := make([]string, len(strict))
		for i, e := range strict {
			msgs[i] = e.Error()
		}
		return fmt.Errorf("strict decoding: %s", strings.Join(msgs, "; "))
	}
	return nil
}
