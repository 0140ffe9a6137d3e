// Package webhooks holds thin admission adapters (defaulting and validating)
// over the pure rule functions of apis/storage/v1.
package webhooks
