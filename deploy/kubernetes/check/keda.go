package main

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"
)

// kafkaTriggerMetadata is the part of KEDA v2.21.0's kafkaMetadata
// (pkg/scalers/kafka_scaler.go) that a ScaledObject's trigger metadata can set: the fields whose
// tag reads from triggerMetadata, copied with their tags. The package that declares it,
// pkg/scalers, holds every scaler KEDA has (cloud SDKs included) and its type is unexported,
// so it is copied here and parsed by KEDA's own parser (scalersconfig.TypedConfig): a value of
// the wrong type, outside its enum, or a missing required field fails as it would in KEDA.
// Keys no field names fail too (KEDA only logs them, behind KEDA_CHECK_UNEXPECTED_SCALERS_PARAMS).
type kafkaTriggerMetadata struct {
	BootstrapServers []string `keda:"name=bootstrapServers,order=triggerMetadata;resolvedEnv"`
	ConsumerGroup    string   `keda:"name=consumerGroup,order=triggerMetadata;resolvedEnv"`
	Topic            string   `keda:"name=topic,order=triggerMetadata;resolvedEnv,optional"`

	PartitionLimitationStr string `keda:"name=partitionLimitation,order=triggerMetadata,optional"`

	LagThreshold           int64 `keda:"name=lagThreshold,order=triggerMetadata,default=10"`
	ActivationLagThreshold int64 `keda:"name=activationLagThreshold,order=triggerMetadata,default=0"`

	OffsetResetPolicy                  string `keda:"name=offsetResetPolicy,order=triggerMetadata,default=latest,enum=latest;earliest"`
	AllowIdleConsumers                 bool   `keda:"name=allowIdleConsumers,order=triggerMetadata,default=false"`
	ExcludePersistentLag               bool   `keda:"name=excludePersistentLag,order=triggerMetadata,default=false"`
	ScaleToZeroOnInvalidOffset         bool   `keda:"name=scaleToZeroOnInvalidOffset,order=triggerMetadata,default=false"`
	LimitToPartitionsWithLag           bool   `keda:"name=limitToPartitionsWithLag,order=triggerMetadata,default=false"`
	EnsureEvenDistributionOfPartitions bool   `keda:"name=ensureEvenDistributionOfPartitions,order=triggerMetadata,default=false"`
	FullMetadata                       bool   `keda:"name=fullMetadata,order=triggerMetadata,default=true"`

	VersionStr string `keda:"name=version,order=triggerMetadata,optional"`

	TLS       string `keda:"name=tls,order=triggerMetadata;authParams,default=disable,enum=enable;disable"`
	UnsafeSsl bool   `keda:"name=unsafeSsl,order=triggerMetadata,default=false"`

	Sasl              string `keda:"name=sasl,order=triggerMetadata;authParams,optional,enum=none;plaintext;scram_sha256;scram_sha512;oauthbearer;gssapi"`
	SaslTokenProvider string `keda:"name=saslTokenProvider,order=triggerMetadata;authParams,optional,enum=bearer;aws_msk_iam"`

	AWSRegion string `keda:"name=awsRegion,order=triggerMetadata,optional"`

	// KEDA's parser requires it (it sets the trigger's index there), as in kafkaMetadata.
	triggerIndex int
}

// validate is KEDA's kafkaMetadata.Validate, the parts that need no credentials.
func (m *kafkaTriggerMetadata) validate() error {
	if m.LagThreshold <= 0 {
		return fmt.Errorf("%q must be positive number", "lagThreshold")
	}
	if m.ActivationLagThreshold < 0 {
		return fmt.Errorf("%q must be a non-negative number", "activationLagThreshold")
	}
	if m.AllowIdleConsumers && m.LimitToPartitionsWithLag {
		return fmt.Errorf("allowIdleConsumers and limitToPartitionsWithLag cannot be set simultaneously")
	}
	if m.Topic == "" && m.LimitToPartitionsWithLag {
		return fmt.Errorf("topic must be specified when using limitToPartitionsWithLag")
	}
	if m.LimitToPartitionsWithLag && m.EnsureEvenDistributionOfPartitions {
		return fmt.Errorf("limitToPartitionsWithLag and ensureEvenDistributionOfPartitions cannot be set simultaneously")
	}
	if m.Topic == "" && m.EnsureEvenDistributionOfPartitions {
		return fmt.Errorf("topic must be specified when using ensureEvenDistributionOfPartitions")
	}
	if !m.FullMetadata && m.Topic == "" {
		return fmt.Errorf("topic must be specified when fullMetadata is false")
	}
	return nil
}

// kafkaMetadataKeys: the metadata keys the struct reads (xFromEnv where it reads resolvedEnv).
func kafkaMetadataKeys() []string {
	var keys []string
	t := reflect.TypeOf(kafkaTriggerMetadata{})
	for i := 0; i < t.NumField(); i++ {
		if !t.Field(i).IsExported() {
			continue
		}
		var name string
		var fromEnv bool
		for _, part := range strings.Split(t.Field(i).Tag.Get("keda"), ",") {
			key, value, _ := strings.Cut(part, "=")
			switch key {
			case "name":
				name = value
			case "order":
				fromEnv = slices.Contains(strings.Split(value, ";"), "resolvedEnv")
			}
		}
		keys = append(keys, name)
		if fromEnv {
			keys = append(keys, name+"FromEnv")
		}
	}
	sort.Strings(keys)
	return keys
}

func validateKafkaTrigger(metadata map[string]string) error {
	known := kafkaMetadataKeys()
	for key := range metadata {
		if !slices.Contains(known, key) {
			return fmt.Errorf("unknown kafka trigger metadata %q (KEDA v2.21.0 reads: %s)", key, strings.Join(known, ", "))
		}
	}
	config := scalersconfig.ScalerConfig{
		TriggerType:     "kafka",
		TriggerMetadata: metadata,
		ResolvedEnv:     map[string]string{},
		AuthParams:      map[string]string{},
	}
	var parsed kafkaTriggerMetadata
	if err := config.TypedConfig(&parsed); err != nil {
		return err
	}
	return parsed.validate()
}
