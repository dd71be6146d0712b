// The broker's request and message counters, read over JMX; genwire_bench.census runs it
// (`java KafkaCensus.java PORT`, the JDK's single-file launch: nothing to build). Kafka's own
// JmxTool lives in the kafka-tools artifact, which the native stack does not install.
// Prints one "kind<TAB>name<TAB>count" line per counter:
//   request   <API>     requests of that API since the broker started (all versions)
//   messages  <topic>   records appended to that topic since the broker started
import java.util.Map;
import java.util.TreeMap;
import javax.management.InstanceNotFoundException;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class KafkaCensus {
  public static void main(String[] args) throws Exception {
    String url = "service:jmx:rmi:///jndi/rmi://127.0.0.1:" + args[0] + "/jmxrmi";
    try (JMXConnector connector = JMXConnectorFactory.connect(new JMXServiceURL(url))) {
      MBeanServerConnection server = connector.getMBeanServerConnection();
      print("request", sum(server, "kafka.network:type=RequestMetrics,name=RequestsPerSec,*", "request"));
      print("messages", sum(server, "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec,topic=*", "topic"));
    }
  }

  private static Map<String, Long> sum(MBeanServerConnection server, String pattern, String key)
      throws Exception {
    Map<String, Long> counts = new TreeMap<>();
    for (ObjectName name : server.queryNames(new ObjectName(pattern), null)) {
      try {
        counts.merge(name.getKeyProperty(key), (Long) server.getAttribute(name, "Count"), Long::sum);
      } catch (InstanceNotFoundException gone) {
        // A topic deleted between the query and the read: its meter went with it.
      }
    }
    return counts;
  }

  private static void print(String kind, Map<String, Long> counts) {
    for (Map.Entry<String, Long> e : counts.entrySet()) {
      System.out.println(kind + "\t" + e.getKey() + "\t" + e.getValue());
    }
  }
}
