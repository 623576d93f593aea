package main

import (
	"strings"
	"testing"
)

const sampleBench = `goos: linux
BenchmarkLoad/weft_from_dev-2   	      10	   2772726 ns/op	      1570 insns	       189.0 states	      4013 verified-insns
BenchmarkLoad/weft_from_dev-2   	      10	   3100000 ns/op	      1570 insns	       189.0 states	      4013 verified-insns
BenchmarkLoad/weft_from_dev-2   	      10	   2900000 ns/op	      1570 insns	       189.0 states	      4013 verified-insns
BenchmarkOpen-2                 	      10	  17709028 ns/op
--- BENCH: BenchmarkOpen-2
PASS
`

func TestSummarizeMediansAndRange(t *testing.T) {
	var out strings.Builder
	if err := summarize(strings.NewReader(sampleBench), &out, []string{"ns/op", "verified-insns"}); err != nil {
		t.Fatal(err)
	}
	want := "| Load/weft_from_dev | 3 | 2900000 [2772726–3100000] | 4013 [4013–4013] |"
	if !strings.Contains(out.String(), want) {
		t.Errorf("summary lacks %q:\n%s", want, out.String())
	}
	if !strings.Contains(out.String(), "| Open | 1 | 17709028 [17709028–17709028] | |") {
		t.Errorf("summary lacks the Open row:\n%s", out.String())
	}
}

func TestSummarizeRefusesEmptyAndBadInput(t *testing.T) {
	if err := summarize(strings.NewReader("PASS\nok x 1s\n"), &strings.Builder{}, []string{"ns/op"}); err == nil {
		t.Error("no benchmark lines: want an error")
	}
	bad := "BenchmarkX-2 10 abc ns/op\n"
	if err := summarize(strings.NewReader(bad), &strings.Builder{}, []string{"ns/op"}); err == nil || !strings.Contains(err.Error(), `"abc"`) {
		t.Errorf("a value that is no number: got %v, want an error naming it", err)
	}
}
