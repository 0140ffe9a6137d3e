package v1

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Day is the unit "d" of ParseDuration: 24 hours, calendar-blind (a day is
// always 24h, whatever the time zone does).
const Day = 24 * time.Hour

// DurationSyntax describes, for messages, what ParseDuration accepts.
const DurationSyntax = "a positive duration in Go syntax plus whole days, e.g. 30s, 1h30m, 7d, 1d12h"

// ParseDuration is the one duration parser of CoucheStor: every duration field
// of the API (samplingWindow, cooldownPeriod, migrationTimeout,
// journalConfig.destageInterval, scrubInterval) is read with it, by the
// webhooks and by the controllers alike.
//
// It accepts Go's time.ParseDuration syntax plus the unit "d" (24h) with a
// whole number of days, in any position: "7d", "1d12h", "90m", "1.5h". Zero,
// negative and unparsable values are refused, as are values beyond
// time.Duration's range (about 292 years).
func ParseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, errors.New("is empty")
	}
	rest := s
	switch rest[0] {
	case '-':
		return 0, errors.New("is negative")
	case '+':
		rest = rest[1:]
	}
	if rest == "" {
		return 0, errors.New("has no value")
	}
	var days int64
	var goPart strings.Builder
	for rest != "" {
		i := 0
		for i < len(rest) && (rest[i] == '.' || ('0' <= rest[i] && rest[i] <= '9')) {
			i++
		}
		if i == 0 {
			return 0, fmt.Errorf("has no number before %q", rest)
		}
		j := i
		for j < len(rest) && rest[j] != '.' && (rest[j] < '0' || rest[j] > '9') {
			j++
		}
		num, unit := rest[:i], rest[i:j]
		if unit == "d" {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("has %q days: days must be a whole number", num)
			}
			if n > math.MaxInt64/int64(Day)-days {
				return 0, errors.New("is too long (the maximum is about 292 years)")
			}
			days += n
		} else {
			goPart.WriteString(rest[:j])
		}
		rest = rest[j:]
	}
	var d time.Duration
	if goPart.Len() > 0 {
		var err error
		if d, err = time.ParseDuration(goPart.String()); err != nil {
			// time's message quotes the input; strip it down to the reason.
			return 0, fmt.Errorf("is not a duration: %s", strings.TrimPrefix(err.Error(), "time: "))
		}
	}
	if days > (math.MaxInt64-int64(d))/int64(Day) {
		return 0, errors.New("is too long (the maximum is about 292 years)")
	}
	total := d + time.Duration(days)*Day
	if total <= 0 {
		return 0, errors.New("is zero")
	}
	return total, nil
}

// FormatDuration renders d in the syntax ParseDuration reads, with whole days
// first: 36h is "1d12h0m0s", 90m is "1h30m0s". ParseDuration(FormatDuration(d))
// == d for every d > 0.
func FormatDuration(d time.Duration) string {
	if d < Day {
		return d.String()
	}
	days, rem := d/Day, d%Day
	if rem == 0 {
		return strconv.FormatInt(int64(days), 10) + "d"
	}
	return strconv.FormatInt(int64(days), 10) + "d" + rem.String()
}
