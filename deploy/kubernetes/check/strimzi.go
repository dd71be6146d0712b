package main

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Strimzi's custom resources, kafka.strimzi.io/v1beta2, as Strimzi 0.47's CRD reference
// describes them. Strimzi is written in Java and publishes no Go module, so these are
// transcribed by hand, and only the part genwire's manifests use: a field of Strimzi's that is
// not here fails the check as an unknown field until it is added (with its CRD type).

type Kafka struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              KafkaSpec `json:"spec"`
}

type KafkaSpec struct {
	Kafka          KafkaClusterSpec    `json:"kafka"`
	EntityOperator *EntityOperatorSpec `json:"entityOperator,omitempty"`
}

type KafkaClusterSpec struct {
	Version         string                       `json:"version,omitempty"`
	MetadataVersion string                       `json:"metadataVersion,omitempty"`
	Listeners       []GenericKafkaListener       `json:"listeners"`
	Config          map[string]any               `json:"config,omitempty"`
	Resources       *corev1.ResourceRequirements `json:"resources,omitempty"`
}

type GenericKafkaListener struct {
	Name string `json:"name"`
	Port int32  `json:"port"`
	// internal, route, loadbalancer, nodeport, ingress, cluster-ip
	Type string `json:"type"`
	TLS  bool   `json:"tls"`
}

type EntityOperatorSpec struct {
	TopicOperator *EntityTopicOperatorSpec `json:"topicOperator,omitempty"`
	UserOperator  *EntityUserOperatorSpec  `json:"userOperator,omitempty"`
}

type EntityTopicOperatorSpec struct {
	WatchedNamespace         string                       `json:"watchedNamespace,omitempty"`
	ReconciliationIntervalMs int64                        `json:"reconciliationIntervalMs,omitempty"`
	Resources                *corev1.ResourceRequirements `json:"resources,omitempty"`
}

type EntityUserOperatorSpec struct {
	WatchedNamespace string                       `json:"watchedNamespace,omitempty"`
	Resources        *corev1.ResourceRequirements `json:"resources,omitempty"`
}

type KafkaNodePool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              KafkaNodePoolSpec `json:"spec"`
}

type KafkaNodePoolSpec struct {
	Replicas  int32                        `json:"replicas"`
	Roles     []string                     `json:"roles"` // controller, broker
	Storage   Storage                      `json:"storage"`
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
}

type Storage struct {
	// jbod, persistent-claim, ephemeral
	Type        string         `json:"type"`
	Volumes     []SingleVolume `json:"volumes,omitempty"`
	Size        string         `json:"size,omitempty"`
	Class       string         `json:"class,omitempty"`
	DeleteClaim bool           `json:"deleteClaim,omitempty"`
}

type SingleVolume struct {
	ID          *int32 `json:"id,omitempty"`
	Type        string `json:"type"`
	Size        string `json:"size,omitempty"`
	Class       string `json:"class,omitempty"`
	DeleteClaim bool   `json:"deleteClaim,omitempty"`
	// shared: this volume also holds the KRaft metadata log
	KraftMetadata string `json:"kraftMetadata,omitempty"`
}

type KafkaTopic struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              KafkaTopicSpec `json:"spec"`
}

type KafkaTopicSpec struct {
	TopicName  string         `json:"topicName,omitempty"`
	Partitions int32          `json:"partitions,omitempty"`
	Replicas   int32          `json:"replicas,omitempty"`
	Config     map[string]any `json:"config,omitempty"`
}

// validateKafkaTopic: what the CRD's schema and the Topic Operator insist on.
func validateKafkaTopic(obj any) error {
	t := obj.(*KafkaTopic)
	if t.Labels["strimzi.io/cluster"] == "" {
		return fmt.Errorf("label strimzi.io/cluster is required (the Topic Operator ignores the topic otherwise)")
	}
	if t.Spec.Partitions < 1 || t.Spec.Replicas < 1 || t.Spec.Replicas > 32767 {
		return fmt.Errorf("partitions and replicas must be at least 1 (replicas at most 32767)")
	}
	return nil
}
