package main

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// benchSeries is every value one benchmark reported for one unit, over the
// -count runs of `go test -bench`.
type benchSeries struct {
	name, unit string
	values     []float64
}

// parseBench reads `go test -bench` output and groups the values by
// benchmark and unit, in the order they first appear. Lines that are not
// benchmark results are skipped.
func parseBench(r io.Reader) ([]*benchSeries, error) {
	var order []*benchSeries
	byKey := map[string]*benchSeries{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue // a benchmark's own log line
		}
		name := f[0]
		if i := strings.LastIndex(name, "-"); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i] // the GOMAXPROCS suffix
			}
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("benchmark %s: value %q of %s is not a number", name, f[i], f[i+1])
			}
			key := name + "\x00" + f[i+1]
			s := byKey[key]
			if s == nil {
				s = &benchSeries{name: name, unit: f[i+1]}
				byKey[key] = s
				order = append(order, s)
			}
			s.values = append(s.values, v)
		}
	}
	return order, sc.Err()
}

// summarize prints, per benchmark, the median of each of units and the
// range over the runs ("median [min–max]"), as a Markdown table.
func summarize(r io.Reader, w io.Writer, units []string) error {
	series, err := parseBench(r)
	if err != nil {
		return err
	}
	rows := map[string]map[string][]float64{}
	var names []string
	for _, s := range series {
		if rows[s.name] == nil {
			rows[s.name] = map[string][]float64{}
			names = append(names, s.name)
		}
		rows[s.name][s.unit] = s.values
	}
	if len(names) == 0 {
		return fmt.Errorf("no benchmark results in the input")
	}
	fmt.Fprintf(w, "| benchmark | runs |")
	for _, u := range units {
		fmt.Fprintf(w, " %s: median [min–max] |", u)
	}
	fmt.Fprintf(w, "\n|---|---:|")
	for range units {
		fmt.Fprintf(w, "---:|")
	}
	fmt.Fprintln(w)
	for _, n := range names {
		runs := 0
		for _, v := range rows[n] {
			runs = max(runs, len(v))
		}
		fmt.Fprintf(w, "| %s | %d |", strings.TrimPrefix(n, "Benchmark"), runs)
		for _, u := range units {
			v := rows[n][u]
			if len(v) == 0 {
				fmt.Fprintf(w, " |")
				continue
			}
			s := append([]float64(nil), v...)
			sort.Float64s(s)
			fmt.Fprintf(w, " %s [%s–%s] |", num(median(s)), num(s[0]), num(s[len(s)-1]))
		}
		fmt.Fprintln(w)
	}
	return nil
}

// num prints a figure with the precision it deserves.
func num(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}
