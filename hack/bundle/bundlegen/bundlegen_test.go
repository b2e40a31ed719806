package bundlegen

import (
	"strings"
	"testing"
)

func TestCheckOwned(t *testing.T) {
	crd := object{
		"metadata": object{"name": "things.example.io"},
		"spec": object{
			"names": object{"kind": "Thing"},
			"versions": []any{object{"name": "v1", "served": true, "schema": object{"openAPIV3Schema": object{
				"properties": object{
					"spec": object{"properties": object{
						"items": object{"type": "array", "items": object{"properties": object{"name": object{}}}},
					}},
					"status": object{"properties": object{"ready": object{}}},
				},
			}}}},
		},
	}
	owned := func(kind string, spec []string, status ...string) object {
		var sd, st []any
		for _, p := range spec {
			sd = append(sd, object{"path": p})
		}
		for _, p := range status {
			st = append(st, object{"path": p})
		}
		return object{"customresourcedefinitions": object{"owned": []any{object{
			"name": "things.example.io", "version": "v1", "kind": kind, "specDescriptors": sd, "statusDescriptors": st,
		}}}}
	}
	if err := checkOwned(owned("Thing", []string{"items.name"}, "ready"), []object{crd}); err != nil {
		t.Errorf("a correct owned entry was refused: %v", err)
	}
	for name, c := range map[string]struct {
		spec object
		crds []object
		want string
	}{
		"misspelt spec path": {owned("Thing", []string{"item.name"}), []object{crd}, `specDescriptor "item.name"`},
		"misspelt status":    {owned("Thing", nil, "redy"), []object{crd}, `statusDescriptor "redy"`},
		"wrong kind":         {owned("Thin", nil), []object{crd}, `kind "Thin"`},
		"CRD not in config":  {owned("Thing", nil), nil, "is not in config/crd"},
		"CRD without owned":  {object{}, []object{crd}, "has no owned entry"},
	} {
		err := checkOwned(c.spec, c.crds)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error with %q", name, err, c.want)
		}
	}
}
